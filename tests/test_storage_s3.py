"""Photos and avatars in S3-compatible object storage (STORAGE_URL), against moto's S3 server
on loopback: the whole path of a job, streamed and redirected reads, replicas without a shared
disk, retention, forwarding, and outages."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from avatar_service.config import ConfigError, Settings
from avatar_service.photos.store import PhotoStore
from avatar_service.storage.local import LocalFolders
from avatar_service.storage.retention import Retention
from tests import photos
from tests.helpers import ManualClock, start_job, wait_for
from tests.receivers import Receiver, free_port
from tests.tcp_proxy import TcpProxy

PREFIX = "tenant-1"
STORAGE_DOWN = "the photo and avatar storage does not answer; try again shortly"


def in_bucket(make_service, s3, tmp_path: Path, *, bucket: str, folder: str = "a", **settings):
    """A live service keeping its files under ``s3://bucket/PREFIX``, its own folders (which
    it must never make) and instance under ``tmp_path/folder``."""
    return make_service(
        storage_url=f"s3://{bucket}/{PREFIX}",
        s3_endpoint_url=settings.pop("s3_endpoint_url", s3.url),
        upload_dir=tmp_path / folder / "uploads",
        output_dir=tmp_path / folder / "avatars",
        instance_path=tmp_path / folder / "instance",
        **settings,
    )


def generate(service, image_name: str, **fields) -> dict:
    """A synchronous generate that succeeds; the job's record."""
    answer = service.http.post(
        "/generate-avatar-by-image", json={"imageName": image_name, "seed": 3, **fields}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded"
    return answer.json()


def test_a_job_keeps_its_photo_faces_and_avatar_in_the_bucket(make_service, s3, standin, tmp_path):
    """Upload, face record, the crop sent to ComfyUI and the avatar all go through the bucket;
    the avatar is streamed with its length and ETag (304 when it matches); no local folder."""
    bucket = s3.bucket()
    service = in_bucket(make_service, s3, tmp_path, bucket=bucket)
    uploaded = service.http.post(
        "/upload-image", files={"image": ("me.png", photos.png(photos.astronaut()), "image/png")}
    )
    assert uploaded.status_code == 201, uploaded.text
    name, faces = uploaded.json()["imageName"], uploaded.json()["faces"]
    assert faces

    job = generate(service, name, width=256, height=256)

    [avatar] = job["avatars"]
    avatar_key = f"{PREFIX}/avatars/{avatar['fileName']}"
    assert s3.keys(bucket) == sorted(
        [f"{PREFIX}/photos/{name}", f"{PREFIX}/photos/{name}.json", avatar_key]
    )
    assert json.loads(s3.read(bucket, f"{PREFIX}/photos/{name}.json"))["faces"] == faces
    stored = s3.read(bucket, avatar_key)
    served = service.http.get(avatar["url"])
    assert served.status_code == 200
    assert served.content == stored
    assert served.headers["content-type"] == "image/png"
    assert served.headers["content-length"] == str(len(stored))
    again = service.http.get(avatar["url"], headers={"If-None-Match": served.headers["etag"]})
    assert again.status_code == 304
    # ComfyUI got the face crop, cut from the photo read back from the bucket.
    crop = job["crop"]
    assert crop["source"] == "face"
    with Image.open(io.BytesIO(stored)) as image:
        graph = json.loads(image.text["prompt"])
    [load] = [node for node in graph.values() if node["class_type"] == "LoadImage"]
    with Image.open(Path(standin.input_dir) / load["inputs"]["image"]) as sent:
        assert sent.size == (crop["width"], crop["height"])
    assert not (tmp_path / "a" / "uploads").exists()
    assert not (tmp_path / "a" / "avatars").exists()


def test_public_reads_redirect_to_a_presigned_url(make_service, s3, tmp_path, photo):
    """With STORAGE_PUBLIC_READS, GET /avatars answers 307 to a presigned URL of the object
    that the store itself serves; an unknown avatar is still a 404."""
    bucket = s3.bucket()
    service = in_bucket(
        make_service, s3, tmp_path, bucket=bucket, storage_public_reads=True, storage_link_ttl=60
    )
    [avatar] = generate(service, service.upload(photo))["avatars"]

    answer = service.http.get(avatar["url"])

    assert answer.status_code == 307
    assert answer.headers["cache-control"] == "no-store"
    location = answer.headers["location"]
    assert location.startswith(f"{s3.url}/{bucket}/{PREFIX}/avatars/{avatar['fileName']}?")
    assert "X-Amz-Expires=60" in location
    fetched = httpx.get(location, timeout=5)
    assert fetched.status_code == 200
    assert fetched.content == s3.read(bucket, f"{PREFIX}/avatars/{avatar['fileName']}")
    unknown = f"{'0' * 32}_0.png"
    missing = service.http.get(f"/avatars/{unknown}")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "code": "avatar_not_found",
            "message": "no such avatar",
            "details": {"fileName": unknown},
        }
    }


def test_replicas_without_a_shared_disk_serve_each_others_files(make_service, s3, tmp_path, photo):
    """Two services with different, empty local folders on one bucket: a photo uploaded to the
    first is framed and generated by the second, whose avatar the first serves."""
    bucket = s3.bucket()
    first = in_bucket(make_service, s3, tmp_path, bucket=bucket, folder="first")
    second = in_bucket(make_service, s3, tmp_path, bucket=bucket, folder="second")
    name = first.upload(photo)

    framing = second.http.get(f"/photos/{name}/framing", params={"width": 64, "height": 64})
    assert framing.status_code == 200, framing.text
    assert (framing.json()["width"], framing.json()["height"]) == (96, 96)
    [avatar] = generate(second, name, width=64, height=64)["avatars"]

    from_first = first.http.get(f"/avatars/{avatar['fileName']}")
    assert from_first.status_code == 200
    assert from_first.content == second.http.get(f"/avatars/{avatar['fileName']}").content
    for folder in ("first", "second"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["instance"]


def test_retention_deletes_objects(make_service, s3, tmp_path, photo):
    """A sweep past RETENTION_HOURS deletes the photo, its face record and the avatar from the
    bucket; the avatar then answers 410."""
    bucket = s3.bucket()
    service = in_bucket(make_service, s3, tmp_path, bucket=bucket)
    name = service.upload(photo)
    job = generate(service, name)
    [avatar] = job["avatars"]
    parts = service.services
    retention = Retention(
        database=parts.database,
        files=parts.files,
        max_age_hours=1,
        interval=600,
        in_use=list,
        is_photo=PhotoStore.made_name,
        avatars_of=lambda job_id: {avatar["fileName"]} if job_id == job["jobId"] else set(),
        clock=ManualClock(time.time() + 2 * 3600),
    )

    assert retention.sweep() == (1, 1)

    assert s3.keys(bucket) == []
    gone = service.http.get(avatar["url"])
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "avatar_expired"


def test_forwarding_reads_the_avatar_from_the_bucket(make_service, s3, tmp_path, photo):
    """The avatar POSTed to UPLOAD_URL is the object stored in the bucket."""
    bucket = s3.bucket()
    with Receiver() as receiver:
        service = in_bucket(
            make_service, s3, tmp_path, bucket=bucket, upload_url=receiver.url("/avatars")
        )
        [avatar] = generate(service, service.upload(photo))["avatars"]
        [request] = receiver.wait_for(1)
    _fields, files = request.multipart()
    filename, content_type, data = files["file"]
    assert (filename, content_type) == (avatar["fileName"], "image/png")
    assert data == s3.read(bucket, f"{PREFIX}/avatars/{avatar['fileName']}")


def test_an_unreachable_store_answers_503(make_service, s3, tmp_path, photo):
    """With the store down, uploads, generates and avatars answer 503 storage_unavailable with
    Retry-After, naming the operation that failed."""
    dead = f"http://127.0.0.1:{free_port()}"
    service = in_bucket(
        make_service,
        s3,
        tmp_path,
        bucket="nowhere",
        s3_endpoint_url=dead,
        storage_max_attempts=1,
        storage_connect_timeout=1,
    )
    name = f"{'A' * 22}.png"
    answers = {
        "upload": service.http.post("/upload-image", files={"image": ("me.png", photo)}),
        "head": service.http.post("/generate-avatar-by-image", json={"imageName": name}),
        "get": service.http.get(f"/avatars/{'0' * 32}_0.png"),
    }
    for operation, answer in answers.items():
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "5"
        error = answer.json()["error"]
        reason = error["details"].pop("reason")
        assert error == {
            "code": "storage_unavailable",
            "message": STORAGE_DOWN,
            "details": {"operation": operation},
        }
        assert dead in reason


def test_a_job_whose_avatar_cannot_be_stored_fails_and_leaves_no_object(
    make_service, s3, standin, tmp_path, photo
):
    """The store goes away while ComfyUI runs the prompt: the job ends failed with
    storage_unavailable, and no avatar object exists."""
    bucket = s3.bucket()
    proxy = TcpProxy(("127.0.0.1", s3.port)).start()
    try:
        service = in_bucket(
            make_service,
            s3,
            tmp_path,
            bucket=bucket,
            s3_endpoint_url=f"http://127.0.0.1:{proxy.port}",
            storage_max_attempts=1,
        )
        name = service.upload(photo)
        standin.set_faults(hang=True)
        job_id = start_job(service, name)
        wait_for(lambda: len(standin.prompts) == 1, message="the prompt queued on ComfyUI")
        proxy.cut()
        standin.set_faults(hang=False)

        record = service.wait_job(job_id)
    finally:
        proxy.stop()

    assert record["status"] == "failed"
    assert record["avatars"] == []
    error = record["error"]
    assert (error["code"], error["message"]) == ("storage_unavailable", STORAGE_DOWN)
    assert error["details"]["operation"] == "put"
    assert s3.keys(bucket, f"{PREFIX}/avatars/") == []
    assert s3.keys(bucket) == [f"{PREFIX}/photos/{name}", f"{PREFIX}/photos/{name}.json"]


# -- settings and the local backend, in-process ------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"STORAGE_URL": "bucket/prefix"}, "STORAGE_URL='bucket/prefix': empty"),
        ({"STORAGE_URL": "s3:///prefix"}, "STORAGE_URL='s3:///prefix': empty"),
        ({"STORAGE_URL": "gs://bucket"}, "STORAGE_URL='gs://bucket': empty"),
        ({"STORAGE_PUBLIC_READS": "true"}, "STORAGE_PUBLIC_READS=true needs a bucket"),
        ({"S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL: 'minio:9000' is not an http"),
        ({"STORAGE_MAX_ATTEMPTS": "0"}, "STORAGE_MAX_ATTEMPTS=0: must be a finite number"),
        ({"STORAGE_READ_TIMEOUT": "0"}, "STORAGE_READ_TIMEOUT=0.0: must be a finite number"),
    ],
)
def test_storage_settings_are_checked(settings, message):
    """A storage setting the service cannot run with stops it, naming the variable."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env(settings)


def test_a_bucket_url_is_accepted():
    """s3://BUCKET and s3://BUCKET/PREFIX are storage URLs; presigned reads may be asked."""
    for url in ("s3://avatars", "s3://avatars/prod/eu"):
        settings = Settings.from_env({"STORAGE_URL": url, "STORAGE_PUBLIC_READS": "true"})
        assert (settings.storage_url, settings.storage_public_reads) == (url, True)


def test_a_failed_write_publishes_nothing_in_local_folders(tmp_path):
    """A write that raises leaves no file, and no temporary file in the listing."""
    files = LocalFolders(photos=tmp_path / "p", avatars=tmp_path / "a")
    with pytest.raises(RuntimeError), files.publish("photos", "x.png") as handle:
        handle.write(b"half")
        raise RuntimeError("cut")
    files.write("avatars", "b.png", b"whole")
    assert not files.exists("photos", "x.png")
    assert [stored.name for stored in files.listing("photos")] == []
    assert [stored.name for stored in files.listing("avatars")] == ["b.png"]
    assert files.read("avatars", "b.png") == b"whole"
    assert files.link("avatars", "b.png", expires=60) is None
    assert files.delete("avatars", "b.png") and not files.delete("avatars", "b.png")
