"""The secrets bucket holds only sealed values; readers with the key see the value; rotation reseals."""

from __future__ import annotations

from pathlib import Path

from nats.js import JetStreamContext

from libs.bus import SECRETS_BUCKET
from libs.sealing import Sealer, new_key, read_key_file, write_key_file
from libs.secrets import SecretStore, rotate_key_file


async def raw_values(js: JetStreamContext) -> dict[str, bytes]:
    kv = await js.key_value(SECRETS_BUCKET)
    return {key: (await kv.get(key)).value or b"" for key in await kv.keys()}


async def test_the_bucket_holds_only_ciphertext_and_the_key_holder_reads_the_value(js: JetStreamContext) -> None:
    key = new_key()
    await (await SecretStore.open(js, Sealer.from_keys(key))).put("default", "hf_token", "hf-pl4in-value")
    raw = await raw_values(js)
    assert list(raw) == ["default.hf_token"]
    assert b"hf-pl4in-value" not in raw["default.hf_token"]
    reader = await SecretStore.open(js, Sealer.from_keys(key))
    assert await reader.get("default", "hf_token") == "hf-pl4in-value"
    # Without the key a reader of the bucket gets nothing (fail closed), not the value.
    stranger = await SecretStore.open(js, Sealer.from_keys(new_key()))
    change = await stranger.get_versioned("default", "hf_token")
    assert change.value is None


async def test_rotating_the_key_reseals_every_value_and_drops_the_old_key(js: JetStreamContext, tmp_path: Path) -> None:
    key_file = tmp_path / "secrets.key"
    old = new_key()
    write_key_file(key_file, [old])
    reader = await SecretStore.open(js, Sealer(lambda: read_key_file(key_file)))  # a running service
    for name in ("a", "b"):
        await reader.put("default", name, f"value-of-{name}")
    before = await raw_values(js)

    assert await rotate_key_file(js, key_file) == 2

    keys = read_key_file(key_file)
    assert len(keys) == 1 and keys[0] != old
    after = await raw_values(js)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in after)
    assert await reader.get("default", "a") == "value-of-a"  # re-read the file, no restart
    old_only = await SecretStore.open(js, Sealer.from_keys(old))
    assert (await old_only.get_versioned("default", "b")).value is None
    assert key_file.stat().st_mode & 0o077 == 0


async def test_values_left_in_plain_text_by_an_older_berth_are_sealed_on_start(js: JetStreamContext, tmp_path: Path) -> None:
    kv = await js.create_key_value(bucket=SECRETS_BUCKET, history=1)
    await kv.put("default.legacy", b"legacy-pl4in-value")
    key = new_key()
    store = await SecretStore.open(js, Sealer.from_keys(key))
    assert await store.seal_plaintext() == 1
    assert b"legacy-pl4in-value" not in (await raw_values(js))["default.legacy"]
    assert await store.get("default", "legacy") == "legacy-pl4in-value"
    assert await store.seal_plaintext() == 0  # sealed values are left alone
