# metastate server image: built with the same make targets as the README, run
# as a non-root user (uid and gid 10001).
#
#   docker build -t metastate .            (or: podman build -t metastate .)
#   docker run -p 127.0.0.1:8080:8080 -v $PWD/models:/models:ro -v metastate-sessions:/var/lib/metastate \
#       -e METASTATE_MODEL=/models/rwkv7-g1-0.1b.pth -e METASTATE_VOCAB=/models/rwkv_vocab_v20230424.txt metastate
#
# Without METASTATE_MODEL the image serves the demo model from models/ (a tiny
# RWKV-7 trained on fortunes, with its byte vocabulary): enough to check a
# deployment. Set METASTATE_MODEL and METASTATE_VOCAB together.
#
# Sessions: by default they are files in /var/lib/metastate/sessions (mount a
# volume there to keep them across restarts). For several replicas set
# METASTATE_STATE_STORE=redis://host:6379/0 and METASTATE_STATE_DIR= (empty);
# see deploy/README.md. No VOLUME is declared: a declared volume would leave
# an anonymous volume behind every container that does not mount one.

FROM debian:12-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends make ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what `make deps` reads, so the toolchain layer is rebuilt when the
# package lists change, not on every source edit.
COPY Makefile ./
COPY tools/deps.sh tools/
RUN make deps && rm -rf /var/lib/apt/lists/*
COPY . .
RUN make build

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        libmicrohttpd12 libjansson4 libopenblas0-pthread libuv1 libssl3 libhiredis0.14 curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 metastate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/metastate metastate \
    && mkdir -p /models /var/lib/metastate/sessions /opt/metastate \
    && chown -R 10001:10001 /var/lib/metastate
COPY --from=build /src/build/metastate /usr/local/bin/metastate
COPY --from=build /src/models/default.safetensors /src/models/bytes_vocab.txt /opt/metastate/
USER 10001:10001
ENV METASTATE_HOST=0.0.0.0 \
    METASTATE_PORT=8080 \
    METASTATE_MODEL=/opt/metastate/default.safetensors \
    METASTATE_VOCAB=/opt/metastate/bytes_vocab.txt \
    METASTATE_STATE_DIR=/var/lib/metastate/sessions
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["metastate", "serve"]
