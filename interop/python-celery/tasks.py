"""Celery app and tasks for the interop suite (interop/python-celery/test_celery.py).

The worker runs `celery -A tasks worker` with this folder as its working dir; the client imports
the same module. Both read their settings from the environment:
  INTEROP_CELERY_BROKER  the broker URL (amqp://...)
  INTEROP_CELERY_QUEUE   the task queue (and its direct exchange and routing key), unique per run
  INTEROP_CELERY_STATE   a directory for the attempt counters that the retrying tasks keep
"""

import os

from celery import Celery

QUEUE = os.environ.get("INTEROP_CELERY_QUEUE", "celery")
STATE = os.environ.get("INTEROP_CELERY_STATE", ".")

app = Celery("tasks", broker=os.environ.get("INTEROP_CELERY_BROKER", "amqp://"), backend="rpc://")
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=False,  # a broker that refuses us fails the start at once
    broker_connection_timeout=10,
    worker_hijack_root_logger=True,
)


class TransientError(Exception):
    """Raised by autoretry_until until its attempts run out."""


def bump(key):
    """Counts one attempt of the task run `key`, returns the attempt number (1, 2, ...)."""
    path = os.path.join(STATE, key)
    try:
        with open(path) as f:
            n = int(f.read() or 0)
    except FileNotFoundError:
        n = 0
    n += 1
    with open(path, "w") as f:
        f.write(str(n))
    return n


@app.task
def add(x, y):
    return x + y


@app.task(bind=True, max_retries=5)
def retry_until(self, key, failures):
    """Fails `failures` times with self.retry (a countdown, so the retry carries an ETA)."""
    n = bump(key)
    if n <= failures:
        raise self.retry(countdown=0.2)
    return {"attempts": n, "retries": self.request.retries}


@app.task(bind=True, autoretry_for=(TransientError,), retry_kwargs={"max_retries": 5, "countdown": 0.2})
def autoretry_until(self, key, failures):
    """Fails `failures` times with an exception listed in autoretry_for."""
    n = bump(key)
    if n <= failures:
        raise TransientError(f"attempt {n}")
    return {"attempts": n, "retries": self.request.retries}


@app.task(bind=True, max_retries=1)
def always_fails(self, key):
    """Retries once, then the ValueError reaches the caller through the result backend."""
    n = bump(key)
    raise self.retry(exc=ValueError(f"attempt {n} failed"), countdown=0.1)


@app.task(bind=True, acks_late=True)
def late_ack(self, x):
    return {"x": x, "redelivered": bool(self.request.delivery_info.get("redelivered"))}


@app.task(bind=True, acks_late=True)
def crash_once(self, key):
    """acks_late: the first attempt kills the worker before the ack, so the broker must requeue
    the message and deliver it again (redelivered) to the next worker."""
    n = bump(key)
    if n == 1:
        os._exit(3)
    return {"attempts": n, "redelivered": bool(self.request.delivery_info.get("redelivered"))}
