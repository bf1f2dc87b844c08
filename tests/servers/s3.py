"""A local S3-compatible server for tests: moto's server mode, with IAM authentication switched on
after the setup calls, so that wrong credentials are refused as AWS refuses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
import httpx

from libs.natsd import free_port

# Calls made before moto starts checking credentials: create_user, create_access_key, put_user_policy.
SETUP_CALLS = 3
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
        )  # fmt: skip


@contextmanager
def s3_server() -> Iterator[S3Server]:
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")  # fmt: skip
        iam.create_user(UserName="berth")
        key = iam.create_access_key(UserName="berth")["AccessKey"]
        iam.put_user_policy(UserName="berth", PolicyName="s3", PolicyDocument=json.dumps(ALLOW_ALL))
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        process.terminate()
        process.wait(10)
