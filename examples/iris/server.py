"""Iris classifier: a small, real model server to run on berth.

At start it loads a scikit-learn LogisticRegression cached with joblib in the working directory, or
trains one on the iris data set (well under a second) and caches it. Loading runs in the background so
the health checks of seeds/003 mean something: /startup answers as soon as the process serves,
/readiness answers 503 until the model is loaded, /liveness while the process is alive.

    PORT=8000 python -m examples.iris.server      # or: python examples/iris/server.py

    curl -X POST localhost:8000/predict -H 'content-type: application/json' \
         -d '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import joblib
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Response, status
from pydantic import BaseModel, Field
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

MODEL_NAME = "iris-logistic-regression"
PROBE_PATHS = {"/startup", "/readiness", "/liveness"}
REPLICA_ID = os.environ.get("BERTH_REPLICA_ID") or socket.gethostname()

# sepal length, sepal width, petal length, petal width (cm)
Features = Annotated[list[float], Field(min_length=4, max_length=4)]


class PredictRequest(BaseModel):
    instances: list[Features] = Field(min_length=1, max_length=10_000)


class PredictResponse(BaseModel):
    predictions: list[str]
    replica: str


class IrisModel:
    """The fitted pipeline and the class names it predicts."""

    def __init__(self, pipeline: Pipeline, classes: list[str]) -> None:
        self.pipeline = pipeline
        self.classes = classes

    def predict(self, instances: list[list[float]]) -> list[str]:
        return [self.classes[int(i)] for i in self.pipeline.predict(instances)]


def model_path() -> Path:
    return Path(os.environ.get("IRIS_MODEL_PATH", "iris-model.joblib")).resolve()


def train() -> IrisModel:
    data = load_iris()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pipeline.fit(data.data, data.target)
    return IrisModel(pipeline, [str(name) for name in data.target_names])


def load_or_train(path: Path) -> IrisModel:
    if path.exists():
        cached = joblib.load(path)
        return IrisModel(cached["pipeline"], cached["classes"])
    model = train()
    # Write then rename, so a replica sharing the directory never reads a half-written file.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    joblib.dump({"pipeline": model.pipeline, "classes": model.classes}, partial)
    partial.replace(path)
    return model


class QuietProbes(logging.Filter):
    """Keep health probes (every second) out of the access log, so the log shows the predictions."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 2 and args[2] in PROBE_PATHS)


class State:
    model: IrisModel | None = None
    delay_seconds: float = 0.0  # test hooks only: how long each prediction takes on purpose


# Test hooks (IRIS_TEST_HOOKS=1, never in examples/iris.yaml): end-to-end tests make one replica slow
# (`PUT /_test/behaviour {"delay_seconds": 0.35}` on that replica) and ask for a 500 (`X-Iris-Fail: 1`),
# so that the figures berth reports can be checked against known latencies and error counts.
TEST_HOOKS = os.environ.get("IRIS_TEST_HOOKS") == "1"


class Behaviour(BaseModel):
    delay_seconds: float = Field(ge=0, le=10)


state = State()


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    logging.getLogger("uvicorn.access").addFilter(QuietProbes())  # uvicorn has configured logging by now

    async def load() -> None:
        state.model = await asyncio.to_thread(load_or_train, model_path())

    task = asyncio.create_task(load())
    yield
    task.cancel()


app = FastAPI(title="iris", lifespan=lifespan)


@app.middleware("http")
async def replica_header(request: Any, call_next: Any) -> Response:
    response: Response = await call_next(request)
    response.headers["X-Replica-Id"] = REPLICA_ID
    return response


@app.get("/")
def info() -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "classes": state.model.classes if state.model else None,
        "ready": state.model is not None,
        "replica": REPLICA_ID,
        "predict": 'POST /predict {"instances": [[sepal_length, sepal_width, petal_length, petal_width]]}',
    }


@app.get("/startup")
def startup() -> str:
    return "Startup check succeeded."


@app.get("/liveness")
def liveness() -> str:
    return "Liveness check succeeded."


@app.get("/readiness")
def readiness(response: Response) -> str:
    if state.model is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return "Readiness check failed: model not loaded yet."
    return "Readiness check succeeded."


@app.put("/_test/behaviour")
def behaviour(change: Behaviour) -> Behaviour:
    if not TEST_HOOKS:
        raise HTTPException(status.HTTP_404_NOT_FOUND)
    state.delay_seconds = change.delay_seconds
    return change


@app.post("/predict")
def predict(request: PredictRequest, fail: Annotated[str | None, Header(alias="X-Iris-Fail")] = None) -> PredictResponse:
    if state.model is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "model not loaded yet")
    if TEST_HOOKS:
        time.sleep(state.delay_seconds)  # a sync handler: runs in the thread pool, others go on
        if fail:
            raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, "failed on request (test hook)")
    return PredictResponse(predictions=state.model.predict(request.instances), replica=REPLICA_ID)


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    uvicorn.run(app, host=host, port=int(os.environ.get("PORT", "8000")), log_level="info")


if __name__ == "__main__":
    main()
