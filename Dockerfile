# Both binaries in a small image. Build: docker build -t pysmurf-monitor-rs .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pysmurf-monitor -p pysmurf-files-manager

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 9000 --create-home --home-dir /home/ocs ocs \
    && install -d -o ocs -g ocs /spool
COPY --from=build /src/target/release/pysmurf-monitor /src/target/release/pysmurf-files-manager /usr/local/bin/
USER ocs
WORKDIR /home/ocs
ENV OCS_CONFIG_DIR=/config
EXPOSE 8200/udp
ENTRYPOINT ["pysmurf-monitor", "--spool-dir", "/spool"]
