# syntax=docker/dockerfile:1.7
#
# cosell: the co-sell referral sync engine, as a small non-root image.
#
#   DOCKER_BUILDKIT=1 docker build -t cosell:0.1.0 .
#   docker run --rm cosell:0.1.0 validate /usr/share/cosell/mappings/dynamics365.yaml
#
# Needs BuildKit (the default since Docker 23) for the cache mounts below. See
# deploy/README.md for running it (Kubernetes, systemd, several instances).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

############################################################################################
# Builder
############################################################################################
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder

# A C toolchain for the crates that compile C: libsqlite3-sys (SQLite is bundled), aws-lc-sys
# and ring (TLS via rustls; there is no OpenSSL anywhere, so no libssl-dev). aws-lc-sys builds
# with the cc crate on Linux, so cmake, clang and Go are not needed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole (filtered, see .dockerignore) context rather than a hand-picked list: the crate
# embeds files from outside src/ (sandbox/schemas/, migrations) and Cargo checks that every
# [[bench]] target exists, so a curated COPY list would break silently on the next such file.
# Dependency reuse comes from the cache mounts, not from layer ordering: a source change
# recompiles only the cosell crate itself.
COPY . .

# - registry/git caches: crates are downloaded once per builder, not once per build.
# - target cache: incremental reuse of compiled dependencies across builds. A cache mount is
#   not part of the image, so the binary is copied out to /out in the same step.
# - --locked: build exactly what Cargo.lock pins (a drifted lock file fails the build).
# - sharing=locked: two concurrent builds on one builder wait instead of corrupting target/.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin cosell \
 && install -D -m 0755 target/release/cosell /out/cosell

############################################################################################
# Runtime
############################################################################################
# debian-slim rather than distroless: same glibc as the builder, ca-certificates from apt,
# and a shell for `kubectl exec … cosell status` style debugging and for the HEALTHCHECK.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: the public roots reqwest/rustls use for Partner Center, Entra ID, Dataverse
# and Salesforce; it also provides Microsoft's root CAs under /etc/ssl/certs/ (handy as
# webhook trust anchors, see deploy/README.md).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid/gid (10001): Kubernetes runAsUser/fsGroup and file ownership on
# mounted volumes can then name it, and it collides with no distribution user.
RUN groupadd --system --gid 10001 cosell \
 && useradd --system --uid 10001 --gid cosell --no-create-home \
      --home-dir /var/lib/cosell --shell /usr/sbin/nologin cosell \
 && install -d -o cosell -g cosell -m 0750 /var/lib/cosell \
 && install -d -m 0755 /etc/cosell

COPY --from=builder /out/cosell /usr/local/bin/cosell
# The shipped mappings and the mapping JSON Schema, as references to copy from (and to
# `cosell validate` against). The mappings point at ../schemas/, so keep them side by side.
# The mapping the engine runs is the operator's, mounted at /etc/cosell/mapping.yaml.
COPY mappings/ /usr/share/cosell/mappings/
COPY schemas/ /usr/share/cosell/schemas/

# The default state store, for a single container with a volume on /var/lib/cosell. Several
# instances need PostgreSQL: set COSELL_STATE=postgres://… (deploy/README.md).
ENV COSELL_STATE=sqlite:///var/lib/cosell/state.db
WORKDIR /var/lib/cosell
USER 10001:10001

# Webhooks (/webhooks/partner-center), /healthz, /readyz and /metrics share this port.
EXPOSE 8080
# cosell finishes its in-flight jobs on SIGTERM; give it time (docker stop -t 60).
STOPSIGNAL SIGTERM

# For plain Docker / Compose only: Kubernetes ignores HEALTHCHECK and uses the probes in
# deploy/kubernetes/deployment.yaml. The image has no curl/wget (deliberately), so bash's
# /dev/tcp asks /healthz (liveness, not /readyz: an upstream credential problem must not
# mark the container unhealthy). Assumes the default --listen port 8080.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && IFS= read -r status <&3 && [[ $status == *' 200 '* ]]"]

ENTRYPOINT ["cosell"]
# Listen on all interfaces (inside a container 127.0.0.1 is unreachable from outside) and log
# one JSON object per line for the log pipeline.
CMD ["run", "--config", "/etc/cosell/mapping.yaml", "--listen", "0.0.0.0:8080", "--log-format", "json"]

LABEL org.opencontainers.image.title="cosell" \
      org.opencontainers.image.description="Two-way sync of Microsoft Partner Center co-sell referrals with Dynamics 365 / Salesforce" \
      org.opencontainers.image.licenses="Apache-2.0"
