FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip install --no-cache-dir '.[postgres,redis,vault,gateway]' \
 && useradd --system --uid 10001 --home /var/lib/broker broker \
 && mkdir -p /var/lib/broker /etc/broker/policies && chown broker /var/lib/broker
COPY policies /etc/broker/policies
USER broker
ENV BROKER_STATE_DIR=/var/lib/broker BROKER_POLICY_DIR=/etc/broker/policies
EXPOSE 8080 6432
ENTRYPOINT ["broker"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
