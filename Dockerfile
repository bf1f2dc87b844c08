# One image for every berth service; compose.yaml and the Helm chart pick the service by command.
FROM python:3.11-slim
WORKDIR /app
# git and git-lfs for git-lfs integrations (services/integrations).
RUN apt-get update && apt-get install -y --no-install-recommends git git-lfs && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY berth ./berth
COPY libs ./libs
COPY services ./services
RUN pip install --no-cache-dir .
ENV BERTH_LOG_JSON=true
ENTRYPOINT ["python", "-m"]
