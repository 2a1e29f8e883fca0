# syntax=docker/dockerfile:1
# latchkey's container image: a release build on Debian bookworm, run on distroless (glibc, no
# shell) as the `nonroot` user 65532, which the Helm chart's security contexts expect.
# scripts/image builds the same image offline (FROM scratch, from a binary built beforehand, with
# buildah) where these base images cannot be pulled; tests/image checks that its user, entrypoint,
# command, ports, labels and data directory are the ones below, and runs it as the chart does. Keep
# the two in step.
#   docker build -t latchkey:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9464:9464 -v $PWD/latchkey.toml:/etc/latchkey/config.toml:ro latchkey:0.1.0

FROM rust:1.95-bookworm AS builder
WORKDIR /build
# protoc comes vendored (protoc-bin-vendored), so the build needs nothing beyond the Rust image.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin latchkey \
    && install -D -m 0755 target/release/latchkey /out/usr/local/bin/latchkey \
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
