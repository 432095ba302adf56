# One image for every tgdl service; docker-compose.yml chooses the command of each
# (`python -m tgdl.<service>`). Build: docker build -t tgdl .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY libs/ libs/
COPY services/ services/

# Every package from this tree (each pins its own dependencies); the launcher brings
# the `tgdl` command for one-off jobs such as `tgdl migrate` and `tgdl seed-demo`.
RUN pip install \
        ./libs/contracts ./libs/bus ./libs/db ./libs/runtime ./libs/telegram \
        ./services/simtelegram ./services/downloader ./services/orchestrator \
        ./services/projector ./services/gateway ./services/catalog ./services/launcher \
 && useradd --create-home --uid 10001 tgdl \
 && mkdir -p /media /sessions /home/tgdl/.tgdl \
 && chown tgdl:tgdl /media /sessions /home/tgdl/.tgdl

USER tgdl
WORKDIR /home/tgdl
ENV TGDL_MEDIA_ROOT=/media \
    TGDL_SESSION_FILE=/sessions/telegram.session

EXPOSE 8000
CMD ["python", "-m", "tgdl.gateway"]
