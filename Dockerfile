# The project installed on the official Airflow 3 image (used by docker-compose.yml).
FROM apache/airflow:3.3.2-python3.11

ENV RAGPIPE_HOME=/opt/airflow/ragpipe \
    RAGPIPE_COLLECTIONS=/opt/ragpipe/collections.yml \
    HF_HUB_OFFLINE=1
COPY --chown=airflow:root . /opt/ragpipe
# CPU torch first, from PyTorch's CPU index: an unpinned torch would pull a multi-GB CUDA build.
# ragpipe installs as a wheel (not editable): its SQL and DAG factory are package data; the image's
# own Airflow stays as it is (the `airflow` extra is not needed here); every source kind is in.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install --no-cache-dir "/opt/ragpipe[gcs,azure]"
