# syntax=docker/dockerfile:1.7
# reel-api: the status API (folds the event log into job states; CONTRACT §5).
#
# Build from the repository root (scripts/deploy.sh does):
#   docker build -f docker/reel-api.Dockerfile -t reel-api .
# reel-api.Dockerfile.dockerignore beside this file keeps target/ and .git/ out of the
# context (BuildKit reads a Dockerfile's own ignore file).
#
# Listens on $PORT (default 8080). Configuration: environment (CONTRACT §7, docs/API.md).

ARG RUST_VERSION=1.95

# ---- build: the one program, release profile, locked dependencies.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p reel-api --bin reel-api \
 && install -D -m 0755 target/release/reel-api /out/reel-api

# ---- runtime: Debian slim, an unprivileged user, nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 reel \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin reel
COPY --from=build /out/reel-api /usr/local/bin/reel-api
USER 10001:10001
ENV TEMP_DIR=/tmp/reel \
    LOG_LEVEL=info
ENTRYPOINT ["/usr/local/bin/reel-api"]
