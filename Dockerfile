# tailor on Debian bookworm, built from Debian packages only.
#   docker build -t tailor .
#   docker run --rm -v /models:/models tailor inspect /models/my-model
#   docker run --rm -p 50051:50051 -v /models:/models -v /etc/tailor:/etc/tailor \
#     --entrypoint /usr/local/bin/tailord tailor \
#     --listen 0.0.0.0:50051 --allowed-root /models \
#     --tls-cert /etc/tailor/tls.crt --tls-key /etc/tailor/tls.key \
#     --auth-token-file /etc/tailor/tokens
# (without --auth-token-file or --tls-client-ca tailord refuses a
# non-loopback --listen; see README.md, "Security")
FROM debian:bookworm
WORKDIR /src/tailor
COPY . .
RUN scripts/setup && \
    install -m 0755 build/client/tailorctl /usr/local/bin/tailorctl && \
    install -m 0755 build/server/tailord /usr/local/bin/tailord && \
    rm -rf build/tests build/src build/client build/server build/proto && \
    apt-get clean && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/usr/local/bin/tailorctl"]
