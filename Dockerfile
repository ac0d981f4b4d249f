# Multi-stage build of a static site-recovery binary on a distroless, non-root base.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin site-recovery

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/site-recovery /usr/local/bin/site-recovery
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/site-recovery"]
CMD ["operator"]
