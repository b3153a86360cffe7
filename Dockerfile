# tailor on Debian bookworm, built from Debian packages only.
#   docker build -t tailor .
#   docker run --rm -v /models:/models tailor inspect /models/my-model
FROM debian:bookworm
WORKDIR /src/tailor
COPY . .
RUN scripts/setup && \
    install -m 0755 build/client/tailorctl /usr/local/bin/tailorctl && \
    rm -rf build/tests build/src build/client && \
    apt-get clean && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/usr/local/bin/tailorctl"]
