# syntax=docker/dockerfile:1
# tailor's image: tailord (the entrypoint) and tailorctl on Debian bookworm,
# built from Debian packages only. Three stages: `runtime-base` (the base
# plus ca-certificates and libcurl4), `build` (compilers and -dev packages)
# and the runtime image (runtime-base plus only the shared libraries the
# two binaries load that it lacks). Runs as uid 65532 and writes only
# /var/lib/tailord (the job store: mount a volume) and /tmp, so a read-only
# root works.
#
#   scripts/image --base debootstrap     # builds and verifies it (podman)
#   docker build -t tailor:0.1.0 --build-arg BASE_IMAGE=mirror/debian:bookworm \
#     --build-arg SOURCE=https://git.example.com/you/tailor .
#   docker run --rm -v /models:/models:ro -v /outputs:/outputs \
#     -v tailord-data:/var/lib/tailord -v /etc/tailor/tokens:/etc/tailord/tokens:ro \
#     -p 50051:50051 -p 9464:9464 --read-only --tmpfs /tmp tailor:0.1.0
#   docker run --rm --entrypoint tailorctl tailor:0.1.0 inspect /models/m
#
# The default command serves with /etc/tailord/tailord.yaml (below): gRPC
# on 0.0.0.0:50051 with bearer tokens from /etc/tailord/tokens/tokens (it
# refuses to start without them: README.md, "Security"), metrics on 9464,
# allowed roots /models and /outputs. Add TLS with
# `--tls-cert ... --tls-key ...` after the image name (flags override the
# file), or mount another /etc/tailord/tailord.yaml.
#
# Build arguments:
#   BASE_IMAGE   the base of both stages (default docker.io/library/debian:
#                bookworm; scripts/image --base, or a local debootstrap)
#   TORCH_DIR    "" (default): Debian's CPU LibTorch 1.13 (libtorch-dev).
#                Else the directory of a LibTorch's TorchConfig.cmake that
#                BASE_IMAGE already holds, e.g. a CUDA-enabled LibTorch
#                (see README.md, "Container image": the CUDA image); the
#                runtime stage then relies on BASE_IMAGE for LibTorch and
#                CUDA, and copies only what Debian packages provide.
#   VERSION, REVISION   the OCI labels org.opencontainers.image.version
#                and .revision (scripts/image sets them from CMakeLists.txt
#                and git)
#   SOURCE       the label org.opencontainers.image.source: the URL of the
#                repository the image is built from (scripts/image
#                --source URL). Not given: the label is empty; there is no
#                default URL.
ARG BASE_IMAGE=docker.io/library/debian:bookworm

# The runtime stage's base: BASE_IMAGE plus, from the base's own package
# archive, the CA certificates (for https:// endpoints, e.g. the object
# stores of issue #16; no ldd list names them) and libcurl (their HTTP
# client, with its dependencies). The build stage stages only libraries of
# packages this stage lacks.
FROM ${BASE_IMAGE} AS runtime-base
RUN export DEBIAN_FRONTEND=noninteractive && apt-get update -q && \
    apt-get install -y -q --no-install-recommends ca-certificates libcurl4 && \
    apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log

FROM ${BASE_IMAGE} AS build
ARG TORCH_DIR=""
WORKDIR /src/tailor
COPY scripts/setup scripts/setup
# Debian's LibTorch unless the base brings its own.
RUN if [ -n "$TORCH_DIR" ]; then \
      sed -i 's/^  libtorch-dev$/  # libtorch-dev: from the base image (TORCH_DIR)/' scripts/setup; \
    fi && \
    scripts/setup --build-deps && \
    rm -rf /var/lib/apt/lists/*
COPY . .
# .git is not copied (.dockerignore): the revision tailord reports comes in
# as REVISION.
ARG REVISION=unknown
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DTAILOR_BUILD_TESTS=OFF -DTAILOR_BUILD_BENCH=OFF \
      -DTAILOR_REVISION="$REVISION" \
      ${TORCH_DIR:+-DTorch_DIR="$TORCH_DIR"} && \
    cmake --build /build --target tailord tailorctl -j "$(nproc)" && \
    strip /build/server/tailord /build/client/tailorctl
# /staging: the binaries, the config and every shared library they load
# that a Debian package of this stage provides, at its real path (so that
# /lib -> /usr/lib in the runtime base stays a link), minus those of the
# packages runtime-base already has installed (the C runtime, libcurl, the
# CA certificates, ...). Libraries no package owns (a LibTorch or CUDA of
# the base) are the base's.
COPY --from=runtime-base /var/lib/dpkg/status /tmp/runtime-dpkg-status
RUN set -eu; s=/staging; \
    mkdir -p $s/usr/local/bin $s/etc/tailord; \
    install -m 0755 /build/server/tailord /build/client/tailorctl $s/usr/local/bin/; \
    install -m 0644 deploy/image/tailord.yaml $s/etc/tailord/tailord.yaml; \
    awk '/^Package:/ {p = $2} /^Status: install ok installed/ {print p}' \
      /tmp/runtime-dpkg-status | sort -u > /tmp/runtime-installed; \
    : > /tmp/packages; \
    ldd /build/server/tailord /build/client/tailorctl | \
      awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u > /tmp/libs; \
    while read -r lib; do echo "$lib"; readlink -f "$lib"; done < /tmp/libs | \
      sort -u | xargs dpkg -S 2>/dev/null | \
      awk -F': ' '{split($1, p, ":"); print $2, p[1]}' > /tmp/owners || true; \
    while read -r lib; do \
      real=$(readlink -f "$lib"); \
      pkg=$(awk -v a="$lib" -v b="$real" '$1 == a || $1 == b {print $2; exit}' /tmp/owners); \
      [ -n "$pkg" ] || continue; \
      if grep -qxF "$pkg" /tmp/runtime-installed; then continue; fi; \
      dir=$(readlink -f "$(dirname "$lib")"); \
      mkdir -p "$s$dir"; cp "$real" "$s$dir/$(basename "$lib")"; \
      echo "$pkg" >> /tmp/packages; \
    done < /tmp/libs; \
    sort -u /tmp/packages > $s/etc/tailord/runtime-packages.txt; \
    echo "staged $(wc -l < /tmp/packages) of the $(wc -l < /tmp/libs) libraries ldd lists, from $(wc -l < $s/etc/tailord/runtime-packages.txt) packages"

FROM runtime-base
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="tailor" \
      org.opencontainers.image.description="tailord: fuses fine-tuned checkpoints into their base (Model Tailor, task arithmetic, TIES, DARE)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build /staging/ /
# uid/gid 65532 (the distroless "nonroot"); its home is the data directory.
# /models and /outputs: mount points of the allowed roots.
RUN echo 'tailor:x:65532:65532:tailor:/var/lib/tailord:/usr/sbin/nologin' >> /etc/passwd && \
    echo 'tailor:x:65532:' >> /etc/group && \
    mkdir -p /var/lib/tailord /models /outputs /etc/tailord/tokens \
      /etc/tailord/tls /etc/tailord/metrics-tokens /etc/tailord/config && \
    chown 65532:65532 /var/lib/tailord && chmod 0700 /var/lib/tailord && \
    ldconfig && \
    /usr/local/bin/tailorctl --version && /usr/local/bin/tailord --help >/dev/null
USER 65532:65532
ENV HOME=/var/lib/tailord TMPDIR=/tmp
WORKDIR /var/lib/tailord
VOLUME ["/var/lib/tailord"]
EXPOSE 50051 9464
# grpc.health.v1 Check on the local port (needs no token). With TLS, run
# it with --tls-ca/--tls-server-name, e.g. TAILOR_TLS_CA=/etc/tailord/tls/ca.crt.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/tailorctl", "health", "--server", "127.0.0.1:50051", "--timeout", "5"]
ENTRYPOINT ["/usr/local/bin/tailord"]
CMD ["--config", "/etc/tailord/tailord.yaml"]
