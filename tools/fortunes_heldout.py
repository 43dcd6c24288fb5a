#!/usr/bin/env python3
"""Writes the held-out fortunes of the default model (models/README.md) as a
fortune file (each document followed by a line "%"), for
`metastate perplexity --docs`.

The split is tools/train.py's load_corpus(): the Debian package `fortunes`
(/usr/share/games/fortunes, files not ending in .dat/.u8, sorted), documents
split at lines "%", blank ones dropped, numpy RandomState(0) permutation,
the first 5% held out. Only numpy is needed (not torch). The document and
byte counts are checked against the ones models/README.md states, so a
different corpus version fails loudly instead of measuring something else.

usage: fortunes_heldout.py OUT
"""
import os
import re
import sys

import numpy as np

CORPUS_DIR = "/usr/share/games/fortunes"
EXPECT_DOCS, EXPECT_BYTES = 760, 124184  # models/README.md


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if not os.path.isdir(CORPUS_DIR):
        sys.exit(f"{CORPUS_DIR} missing: apt-get install fortunes")
    files = sorted(f for f in os.listdir(CORPUS_DIR)
                   if not f.endswith((".dat", ".u8")) and not os.path.islink(os.path.join(CORPUS_DIR, f))
                   and os.path.isfile(os.path.join(CORPUS_DIR, f)))
    docs = []
    for name in files:
        with open(os.path.join(CORPUS_DIR, name), "rb") as f:
            docs += [d for d in re.split(rb"(?m)^%\n", f.read()) if d.strip()]
    order = np.random.RandomState(0).permutation(len(docs))
    held = [docs[i] for i in order[:max(1, int(len(docs) * 0.05))]]
    n_bytes = sum(len(d) for d in held)
    if (len(held), n_bytes) != (EXPECT_DOCS, EXPECT_BYTES):
        sys.exit(f"held-out split is {len(held)} documents / {n_bytes} bytes, "
                 f"expected {EXPECT_DOCS} / {EXPECT_BYTES}: not the corpus the model was measured on")
    with open(sys.argv[1], "wb") as f:
        for d in held:
            # A document that does not end in a newline would swallow the
            # separator line; none does in this corpus.
            if not d.endswith(b"\n"):
                sys.exit("a held-out document does not end in a newline")
            f.write(d + b"%\n")


if __name__ == "__main__":
    main()
