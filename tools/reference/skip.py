"""How a reference check ends when what it needs is absent.

A user's `make test` may lack python3-torch or ../shared: the check prints
one line "SKIP: <category>; <detail>" (tests/summary.sh counts categories)
and passes. Under METASTATE_REQUIRE_REFERENCE=1 (set by .ci/run) the same
absence fails the check, so CI cannot pass by skipping.
"""
import os

NO_TORCH = "python3-torch not installed"
NO_SHARED = "../shared not present"
NO_BINARY = "metastate binary not built"


def skip(category, detail):
    """Prints the outcome and returns the exit status for main()."""
    required = os.environ.get("METASTATE_REQUIRE_REFERENCE", "") not in ("", "0")
    if required:
        print(f"FAIL: {category}; {detail} (METASTATE_REQUIRE_REFERENCE=1)")
        return 1
    print(f"SKIP: {category}; {detail}")
    return 0
