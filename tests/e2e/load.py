"""Client load for the crash tests: threads sending distinct chat requests until stopped, noting what was answered."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter

import httpx

from bench.waiting import WaitTimedOut, wait_until


class Load:
    """`clients` threads, each sending one request at a time, spread over `urls` in turn."""

    def __init__(self, urls: list[str], key: str, clients: int = 16) -> None:
        self.urls = urls
        self.key = key
        self.answered: list[str] = []  # ids of the exchanges answered 200
        self.answered_by: Counter[str] = Counter()  # url -> answers
        self.refused: list[tuple[int, str]] = []  # every other answer: status and body
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def wait_for(self, answers: int, timeout_s: float = 240) -> bool:
        """Whether `answers` requests are answered within `timeout_s` (the caller's assertion says what that means)."""
        with contextlib.suppress(WaitTimedOut):
            wait_until(f"{answers} answers", lambda: len(self.answered) >= answers, timeout_s, poll_s=0.05)
        return len(self.answered) >= answers

    def stop(self) -> None:
        """No new request; those in flight finish (and count) first."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(150)

    def _client(self, worker: int) -> None:
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {self.key}"}) as client:
            n = 0
            while not self._stop.is_set():
                n += 1
                url = self.urls[(worker + n) % len(self.urls)]
                body = {
                    # Distinct prompts and sampling, so no answer comes from the response cache.
                    "messages": [{"role": "user", "content": f"Client {worker} asks question {n}: name a colour."}],
                    "max_tokens": 6,
                    "temperature": 0.8,
                    "seed": worker * 1000 + n,
                }
                try:
                    r = client.post(url + "/v1/chat/completions", json=body)
                except httpx.HTTPError:
                    return  # the server died mid-request: this one was never answered
                if r.status_code == 200:
                    self.answered.append(r.json()["id"])
                    self.answered_by[url] += 1
                else:
                    self.refused.append((r.status_code, r.text))
