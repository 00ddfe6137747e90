"""Password hashing gives its 19 MiB work areas back to the OS (glibc only)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from server.domain import passwords

_HASH_ON_MANY_THREADS = textwrap.dedent(
    """
    from concurrent.futures import ThreadPoolExecutor
    from server.domain import passwords

    def rss_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    assert passwords.return_hash_memory_to_the_os()
    hasher = passwords.PasswordHasher(concurrency=2)
    before = rss_kib()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: hasher.hash("correct horse battery staple"), range(48)))
    print(rss_kib() - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_hashes_on_many_threads_leave_no_work_areas_resident() -> None:
    if not passwords.return_hash_memory_to_the_os():
        pytest.skip("the C library has no mallopt (not glibc)")
    result = subprocess.run(
        [sys.executable, "-c", _HASH_ON_MANY_THREADS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    grown_mib = int(result.stdout) / 1024
    # 16 threads each keeping a 19 MiB area would be ~300 MiB; two areas at a time plus
    # allocator slack stay far below this.
    assert grown_mib < 64, f"RSS grew by {grown_mib:.0f} MiB"
