# syntax=docker/dockerfile:1

# --- build ------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
# jemalloc (adtrack's allocator) is built from source with make.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# No query needs a live database at compile time: the macros check SQL
# against the query data in .sqlx/ (copied below); migrations are embedded.
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never

# Dependencies first, in their own layer: rebuilt only when Cargo.* change.
# .cargo/config.toml carries jemalloc's built-in options, which the
# allocator's build (a dependency) reads.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

COPY .sqlx .sqlx
COPY src src
COPY migrations migrations
COPY web web
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# --- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for TLS to managed Postgres/Redis; the health check is the
# binary itself (`adtrack healthcheck`), so no curl. ca-certificates is left
# unpinned on purpose: it should follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 adtrack \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin adtrack \
 && mkdir -p /app/fallback \
 && chown adtrack:adtrack /app/fallback
WORKDIR /app
COPY --from=build /src/target/release/adtrack /usr/local/bin/adtrack
USER 10001:10001
ENV PORT=8080 SPOOL_DIR=/app/fallback
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["adtrack", "healthcheck", "--timeout", "2"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["adtrack"]
CMD ["serve"]
