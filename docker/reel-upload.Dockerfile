# syntax=docker/dockerfile:1.7
# reel-upload: the upload stage (writes the reel to its output path).
#
# Build from the repository root (scripts/deploy.sh does):
#   docker build -f docker/reel-upload.Dockerfile -t reel-upload .
# reel-upload.Dockerfile.dockerignore beside this file keeps target/ and .git/ out of the
# context (BuildKit reads a Dockerfile's own ignore file).
#
# Runs pull mode by default; Cloud Run passes `--push` (listen on $PORT) or
# `--exit-when-idle SECS` (terraform/run.tf). Configuration: environment (CONTRACT §7).

ARG RUST_VERSION=1.95

# ---- build: the one program, release profile, locked dependencies.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p reel-upload --bin reel-upload \
 && install -D -m 0755 target/release/reel-upload /out/reel-upload

# ---- runtime: Debian slim, an unprivileged user, nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 reel \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin reel
COPY --from=build /out/reel-upload /usr/local/bin/reel-upload
USER 10001:10001
ENV TEMP_DIR=/tmp/reel \
    LOG_LEVEL=info
ENTRYPOINT ["/usr/local/bin/reel-upload"]
