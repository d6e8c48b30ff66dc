# syntax=docker/dockerfile:1
#
# The ldlm image (the default, last stage) and the example client of
# docker-compose.yml (target "example"):
#
#   docker build -t ldlm .
#   docker run --rm -p 4222:4222 ldlm           # embedded mode: NATS on :4222
#   docker build --target example -t ldlm-example .
#
# Both are static binaries on distroless, running as the nonroot user
# (65532). The version reported by `ldlm version` and `nats micro info` is
# the build argument VERSION (`docker build --build-arg VERSION=v1.2.3 .`),
# else 0.0.0-dev: the build context has no .git to stamp it from.

FROM golang:1.26-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=0
# Dependencies first, so that a change of code does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.buildVersion=${VERSION}" -o /out/ldlm ./cmd/ldlm

FROM build AS build-example
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/ldlm-example ./deploy/example

FROM gcr.io/distroless/static-debian12:nonroot AS example
COPY --from=build-example /out/ldlm-example /ldlm-example
USER 65532:65532
ENTRYPOINT ["/ldlm-example"]

FROM gcr.io/distroless/static-debian12:nonroot AS ldlm
COPY --from=build /out/ldlm /ldlm
USER 65532:65532
# Embedded mode (no LDLM_NATS_URL): the NATS server in the binary must listen
# on all interfaces of the container, not on its loopback, to be reachable
# through a published port. External mode ignores this.
ENV LDLM_EMBEDDED_LISTEN=0.0.0.0:4222
EXPOSE 4222
ENTRYPOINT ["/ldlm"]
