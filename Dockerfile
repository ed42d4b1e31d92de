FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e . && python -m fhir_server.validation.build
EXPOSE 8080
# Beyond loopback the server requires SMART tokens.
ENV FHIR_AUTH=smart
# Listening beyond loopback: set FHIR_DATABASE_URL to a PostgreSQL >= 15 with pgvector.
CMD ["fhir-server", "serve", "--host", "0.0.0.0", "--port", "8080"]
