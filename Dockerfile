# sandwatch's image: docker build -t ghcr.io/sandwatch/sandwatch:0.1.0 .
# Build stage: the release binary. Runtime stage: distroless (glibc, CA roots, no shell),
# running as the non-root user 65532.
FROM rust:1.95-slim-bookworm AS build
# make builds jemalloc (the global allocator); the slim image has only the C compiler.
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin sandwatch

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sandwatch /sandwatch
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/sandwatch"]
CMD ["run", "--config=/etc/sandwatch/config/sandwatch.yaml", "--listen=0.0.0.0:8080"]
