# syntax=docker/dockerfile:1
# flagserve images.
#   CPU:  docker build -t flagserve .
#   CUDA: docker build --build-arg VARIANT=cuda -t flagserve:cuda .
# The CUDA variant runs on nvidia/cuda (CUDA 12, cuDNN 9) and fetches onnxruntime-node's CUDA
# execution provider at build time; run it with --gpus all and --devices cuda:0,...
ARG VARIANT=cpu
ARG NODE_VERSION=20

# ---------------------------------------------------------------- build: compile TypeScript
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
ENV ONNXRUNTIME_NODE_INSTALL=skip
COPY package.json package-lock.json .npmrc ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

# ---------------------------------------------------------------- runtime bases
FROM node:${NODE_VERSION}-bookworm-slim AS base-cpu

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS base-cuda
ARG NODE_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && curl -fsSL "https://deb.nodesource.com/setup_${NODE_VERSION}.x" | bash - \
 && apt-get install -y --no-install-recommends nodejs \
 && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- runtime
FROM base-${VARIANT} AS runtime
ARG VARIANT
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
# The CUDA provider libraries are not in the npm package: fetch them for the CUDA image only.
RUN if [ "$VARIANT" = "cuda" ]; then ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install.js; fi
RUN groupadd --system flagserve && useradd --system --gid flagserve --create-home --home-dir /home/flagserve flagserve \
 && mkdir -p /data/hf && chown -R flagserve:flagserve /data
USER flagserve
# Models are cached here; mount a volume to keep them between containers.
ENV HF_HOME=/data/hf \
    FLAGSERVE_HOST=0.0.0.0 \
    FLAGSERVE_PORT=8080 \
    NODE_ENV=production
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s CMD node -e "fetch('http://127.0.0.1:8080/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
ENTRYPOINT ["node", "dist/src/cli.js"]
CMD ["serve"]
