# syntax=docker/dockerfile:1
# One image with both binaries; the Deployment (k8s/) and Compose (deploy/compose/) run it with two commands:
#   /usr/local/bin/sidecred-agent run      (owns the credentials, serves the token on a Unix socket)
#   /usr/local/bin/sidecred-forwarder      (the default command: the HTTP proxy on :8000)
#
#   docker build -t ghcr.io/sidecred/sidecred:0.1.0 .
#   docker build --target demo-backend .     (the demo's stand-in, see below)
#
# Binaries built elsewhere (CI builds them on the host: .ci/image.sh) instead of in the Rust image:
#   docker build --build-arg BINARIES=prebuilt -f Dockerfile DIR
# where DIR holds the trees to copy: DIR/image/ (usr/local/bin/sidecred-agent and sidecred-forwarder,
# run/sidecred and var/lib/sidecred at mode 1777) and, for --target demo-backend, DIR/demo/
# (usr/local/bin/sidecred-demo-backend, var/lib/sidecred-demo at 1777). Build one target at a time, and pass
# BINARIES even for its default: buildah 1.28 otherwise drops a stage it then needs.

ARG RUST_VERSION=1.95
# Where the binaries come from: `build` compiles them here (the default), `prebuilt` takes them from the
# context (above).
ARG BINARIES=build

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and incremental build output between builds on one machine
# (BuildKit); the binaries are copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p sidecred-agent -p sidecred-forwarder \
    && install -D -m 0755 -t /out/usr/local/bin target/release/sidecred-agent target/release/sidecred-forwarder
# Mount points for the socket and the state. Sticky and world-writable like /tmp, so that Compose can run the
# pair as the host user's uid (to read ~/.claude) and still initialise its named volumes from here.
# In Kubernetes both paths are volumes whose ownership comes from fsGroup.
RUN install -d -m 1777 /out/run/sidecred /out/var/lib/sidecred

# The demo's stand-in for Claude's endpoints (tests/src/bin/sidecred-demo-backend.rs), for
# deploy/compose/compose.demo.yaml: `docker build --target demo-backend .`. An image of its own, so the one
# below never carries it. Its login goes to /var/lib/sidecred-demo, sticky and world-writable for the same
# reason as the mount points below.
FROM build AS demo-build
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin sidecred-demo-backend \
    && install -D -m 0755 -t /demo/usr/local/bin target/release/sidecred-demo-backend \
    && install -d -m 1777 /demo/var/lib/sidecred-demo

# The same trees, built elsewhere: the context is a directory with image/ and demo/ (see the top).
FROM scratch AS prebuilt
COPY image/ /out/

FROM scratch AS demo-prebuilt
COPY demo/ /demo/

# The chosen source of the binaries: `build` or `prebuilt`, and `demo-build` or `demo-prebuilt`. Stages, not
# images, so there is no tag to pin.
FROM ${BINARIES} AS binaries
# hadolint ignore=DL3006
FROM demo-${BINARIES} AS demo-binaries

FROM gcr.io/distroless/cc-debian12:nonroot AS demo-backend
LABEL org.opencontainers.image.title="sidecred-demo-backend" \
      org.opencontainers.image.description="A local stand-in for Claude's endpoints, for sidecred's demo (not Claude)" \
      org.opencontainers.image.source="https://github.com/sidecred/sidecred" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=demo-binaries /demo/ /
USER 65532:65532
# compose.demo.yaml gives the addresses and the login file.
CMD ["/usr/local/bin/sidecred-demo-backend", "--help"]

# The image (the default target: the last stage).
# Debian 12 with glibc and libgcc, no shell, no package manager, uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sidecred" \
      org.opencontainers.image.description="Serves a Claude Pro/Max OAuth account as an Anthropic API endpoint" \
      org.opencontainers.image.source="https://github.com/sidecred/sidecred" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=binaries /out/ /
USER 65532:65532
EXPOSE 8000
CMD ["/usr/local/bin/sidecred-forwarder"]
