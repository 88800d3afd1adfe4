"""Publishing audit checkpoints against MongoDB over the wire: each replica signs the heads
it wrote, a sink that fails keeps one pending head per organization, and the next round
publishes it."""

from __future__ import annotations

from pathlib import Path

from storage.audit.checkpoints import AuditCheckpoints, FileSink
from storage.audit.log import AuditLog
from storage.backends.mongo import MongoStore
from storage.core.checkpoints import Checkpoint, CheckpointKeys, generate_key
from storage.core.ids import new_organization_id
from tests.storage.audit.test_log import record


async def test_a_failed_sink_keeps_the_newest_head_until_the_next_round(
    quiet_mongo: MongoStore, tmp_path: Path
) -> None:
    log = AuditLog(mongo=quiet_mongo)
    keys = CheckpointKeys.parse(generate_key("audit.example.com").encoded())
    sink = FileSink(tmp_path / "not-yet")
    checkpoints = AuditCheckpoints(keys=keys, sinks=[sink], log=log)
    one, two = new_organization_id(), new_organization_id()
    record(log, one, 3, tag="a")
    record(log, two, 2, tag="b")
    await log.flush()
    await checkpoints.publish_written()  # the directory does not exist: both stay pending
    assert checkpoints.failures == 2 and checkpoints.published == 0
    record(log, one, 4, tag="c")
    await log.flush()
    (tmp_path / "not-yet").mkdir()
    await checkpoints.publish_written()
    assert checkpoints.published == 2
    heads = {org: Checkpoint.parse(keys.open(sink.path_of(org).read_text())) for org in (one, two)}
    assert (heads[one].sequence, heads[two].sequence) == (7, 2)
    assert heads[one] == Checkpoint(one, 7, (await log.verify(one)).last_hash)
    await checkpoints.publish_written()  # nothing written since: nothing signed again
    assert checkpoints.published == 2
    # an older checkpoint never replaces a newer one in the file
    older = Checkpoint(one, 3, heads[one].hash)
    await sink.publish(older, keys.signer.sign(older.text()))
    assert Checkpoint.parse(keys.open(sink.path_of(one).read_text())).sequence == 7
