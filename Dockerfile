# The llm-operator image: `llm-operator run` on a slim Python 3.11 base, as a non-root user.
#
# The build stage installs the package with its pinned dependencies (pyproject.toml) into a
# virtual environment; the runtime stage copies only that environment. tests/test_chart.py
# replays the build stage's instructions in a fresh local virtual environment and runs the
# entrypoint, so this recipe cannot rot unnoticed. Keep the build stage to FROM, ARG, ENV,
# WORKDIR, COPY and RUN, which that test understands.

FROM python:3.11.13-slim-bookworm AS build
ARG VENV=/opt/llm-operator
ARG SRC=/src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
WORKDIR $SRC
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv "$VENV" && "$VENV/bin/pip" install --upgrade "pip==26.3" && "$VENV/bin/pip" install .

FROM python:3.11.13-slim-bookworm
ARG VENV=/opt/llm-operator
# NOTE: a passwd entry for the numeric user keeps getpass.getuser() working (Kopf calls it
# when POD_ID is unset); the chart runs the pod as the same uid/gid.
RUN groupadd --system --gid 65532 llm-operator \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin llm-operator
COPY --from=build $VENV $VENV
ENV PATH=$VENV/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# 8080: Prometheus metrics; 8081: /healthz (LLM_OPERATOR_METRICS_PORT, LLM_OPERATOR_HEALTH_PORT).
EXPOSE 8080 8081
ENTRYPOINT ["llm-operator"]
CMD ["run"]
