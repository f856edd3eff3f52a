FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends fonts-noto-cjk && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml ./
COPY . .
RUN pip install --no-cache-dir -e . && useradd --system --home /app kilowatt && mkdir -p /var/lib/kilowatt && chown kilowatt /var/lib/kilowatt
USER kilowatt
EXPOSE 8000
