"""The still a Kling JSON request names: its `image` string is a data URI or an http(s) URL.

A link to the simulator's own media is looked up in its state, as Novita would download its own
storage: no HTTP round trip, and no count as a media download. Any other URL is downloaded.
"""

import base64
import binascii
import re

import httpx

from novita_simulator.errors import InvalidRequest
from novita_simulator.state import MEDIA_PREFIX, SimulatorState
from novita_simulator.validation import KLING_MAX_IMAGE_BYTES

DOWNLOAD_TIMEOUT = 10.0
DATA_URI = re.compile(r"data:image/(?:jpeg|png);base64,(.*)", re.DOTALL)
# A download stops one byte past the limit: enough for the still's checks to refuse it as too large.
DOWNLOAD_LIMIT = KLING_MAX_IMAGE_BYTES + 1


class StillFetcher:
    def __init__(self, state: SimulatorState, base_url: str) -> None:
        self._state = state
        self._own_media = f"{base_url}{MEDIA_PREFIX}"
        self._client = httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True)

    def fetch(self, image: str) -> bytes:
        """The still's bytes; InvalidRequest when the string leads to none."""
        if image.startswith("data:"):
            return decode_data_uri(image)
        if image.startswith(self._own_media):
            return self._own_still(image)
        if image.startswith(("http://", "https://")):
            return self._download(image)
        raise InvalidRequest("image: must be an http(s) URL or a data:image/jpeg;base64 or png data URI")

    def close(self) -> None:
        self._client.close()

    def _own_still(self, url: str) -> bytes:
        link = self._state.find_media(url.removeprefix(self._own_media).partition("?")[0])
        if link is None:
            raise InvalidRequest(f"image: could not download {url}: HTTP 404, no such object")
        if link.expired():
            raise InvalidRequest(f"image: could not download {url}: HTTP 403, the link has expired")
        return link.asset.data

    def _download(self, url: str) -> bytes:
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise InvalidRequest(f"image: could not download {url}: HTTP {response.status_code}")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) >= DOWNLOAD_LIMIT:
                        break
                return bytes(data)
        except httpx.HTTPError as error:
            raise InvalidRequest(f"image: could not download {url}: {type(error).__name__}") from None


def decode_data_uri(image: str) -> bytes:
    match = DATA_URI.fullmatch(image)
    if match is None:
        raise InvalidRequest(
            "image: a data URI must be data:image/jpeg;base64,... or data:image/png;base64,..."
        )
    try:
        return base64.b64decode(match[1], validate=True)
    except binascii.Error:
        raise InvalidRequest("image: the data URI is not valid base64") from None
