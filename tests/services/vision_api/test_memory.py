"""vision-api under its container's memory limit (a memory cgroup, as compose sets it), with the
real model server: the largest image of each kind it accepts, alone and several at once, never
costs a worker (issue 13: a 40 MP JPEG, a 10 MP RGBA PNG and a 20 MP 16-bit PNG used to)."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib

import psutil
import pytest
import requests

from local_stack import compose_file
from service_kit.http.errors import SHED_CODES
from tests.conftest import required_in_ci
from tests.memory_cgroup import CgroupUnavailable, memory_cgroup
from tests.services.conftest import start_api
from tests.services.vision_api.largest_images import largest_images
from vision_api.image_headers import read_header

pytestmark = pytest.mark.slow

LIMIT_MB = int(compose_file.load().environments["vision-api"]["MEMORY_LIMIT_MB"])
MB = 2**20


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return largest_images(LIMIT_MB)


@pytest.fixture(scope="module")
def limited(model_server, tmp_path_factory):
    """One vision-api instance (one worker, as compose runs it) in a cgroup of compose's limit;
    it learns the limit from the cgroup, as in a container."""
    with contextlib.ExitStack() as stack:
        try:
            cgroup = stack.enter_context(memory_cgroup(LIMIT_MB * MB, "vision-api-memory-test"))
        except CgroupUnavailable as error:
            required_in_ci("the memory-limit test", error)
        log = tmp_path_factory.mktemp("vision-api-limited") / "log"
        instance = start_api("vision-api", model_server.grpc_address, log, 1, cgroup=cgroup)
        stack.callback(instance.process.stop)
        yield instance, cgroup


def post(url: str, data: bytes, as_json: bool = False) -> requests.Response:
    if as_json:
        return requests.post(f"{url}/cv_sod", json={"img": base64.b64encode(data).decode()}, timeout=120)
    return requests.post(f"{url}/cv_sod", data=data, headers={"Content-Type": "image/png"}, timeout=120)


def test_the_largest_image_of_each_kind_costs_what_the_service_reserves(limited, images):
    instance, cgroup = limited
    for kind, data in images.items():
        header = read_header(data)
        before = cgroup.usage_bytes()
        cgroup.reset_peak()
        reply = post(instance.url, data)
        assert reply.status_code == 200, (kind, reply.text)
        grew = cgroup.peak_bytes() - before
        reserved = header.working_bytes(320) + len(data)
        print(f"{kind}: {header.describe()}, {len(data) >> 10} KB: peak +{grew / MB:.0f} MB, "
              f"reserved {reserved / MB:.0f} MB")
        # What is not in the reservation (a few MB of buffers, the answer) is the budget's margin.
        assert grew <= reserved + 24 * MB, (kind, grew / MB, reserved / MB)


def test_all_of_them_at_once_twice_over_lose_no_worker(limited, images):
    """Two of the largest image of each kind in flight, and one as JSON (base64: its body is
    several times its size): each is answered 200, or refused with a JSON 503 before any model
    work (busy once it waited its turn for too long, deadline_unreachable when the batcher saw it
    could not be answered in time), or 504 at its deadline when its turn came too late; the worker
    lives, the kernel killed nothing."""
    instance, cgroup = limited
    pids = cgroup.pids()
    kills = cgroup.oom_kills()
    requests_to_send = [(kind, data, False) for kind, data in images.items()] * 2
    requests_to_send.append(("png-rgba", images["png-rgba"], True))
    with concurrent.futures.ThreadPoolExecutor(len(requests_to_send)) as pool:
        replies = list(pool.map(lambda r: (r[0], post(instance.url, r[1], r[2])), requests_to_send))
    answers = [(kind, reply.status_code, reply.headers.get("Content-Type")) for kind, reply in replies]
    assert all(status == 200 or (status in (503, 504) and kind_type == "application/json")
               for _, status, kind_type in answers), [(k, r.status_code, r.text[:200]) for k, r in replies
                                                     if r.status_code != 200]
    refused = [reply.json()["error"]["code"] for _, reply in replies if reply.status_code >= 500]
    assert set(refused) <= SHED_CODES | {"model_timeout"}, refused
    assert sum(status == 200 for _, status, _ in answers) >= len(images), answers
    assert cgroup.oom_kills() == kills and cgroup.pids() == pids, ("a process was killed", pids, cgroup.pids(),
                                                                   [(p, _command(p)) for p in cgroup.pids()])
    assert "SIGKILL" not in instance.process.log_text()
    print(f"peak of the instance: {cgroup.peak_bytes() / MB:.0f} MB of {LIMIT_MB} MB; answers: {answers}")


def _command(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[-80:]
    except psutil.Error as error:
        return repr(error)
