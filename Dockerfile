# syntax=docker/dockerfile:1
# latchkey's container image: a build with the release-lto profile (fat LTO, one codegen unit: what
# the benchmark measures; slower to build than `--release`, once per image) on Debian bookworm, run
# on distroless (glibc, no shell) as the `nonroot` user 65532, which the Helm chart's security
# contexts expect.
# scripts/image builds the same image offline (FROM scratch, from a binary built beforehand, with
# buildah) where these base images cannot be pulled; tests/image checks that its user, entrypoint,
# command, ports, labels and data directory are the ones below, and runs it as the chart does. Keep
# the two in step.
# How to build and run it (with a server key that stays with the data volume, and a config file):
# docs/operations.md, "The container image"; tests/image runs that example.

FROM rust:1.95-bookworm AS builder
WORKDIR /build
# protoc comes vendored (protoc-bin-vendored), so the build needs nothing beyond the Rust image.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --profile release-lto --locked --bin latchkey \
    && install -D -m 0755 target/release-lto/latchkey /out/usr/local/bin/latchkey \
    && install -d -m 0750 /out/var/lib/latchkey

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="latchkey" \
      org.opencontainers.image.description="Passwordless identity over gRPC: login, magic and enchanted links, sessions, OAuth" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/usr/local/bin/latchkey /usr/local/bin/latchkey
# The data directory, owned by the runtime user for plain `docker run`; in Kubernetes a volume
# is mounted here.
COPY --from=builder --chown=65532:65532 /out/var/lib/latchkey /var/lib/latchkey
USER 65532:65532
# gRPC; HTTP (JWKS, OpenID discovery, /metrics, /healthz, /readyz).
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/latchkey"]
CMD ["serve", "--config", "/etc/latchkey/config.toml"]
