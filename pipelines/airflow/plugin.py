"""The search service inside Airflow: mounted on the API server at /ragpipe, and a "Search" entry
in the UI's navigation. Registered through the `airflow.plugins` entry point, so installing the
package is enough. Creating the app is cheap: nothing connects or loads a model at import; when the
API server starts (Airflow does not start a mounted app itself), a root middleware starts loading
the collections' models in the background, so the first search is not the slow one."""

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from pipelines.airflow import SEARCH_URL_PREFIX as URL_PREFIX
from pipelines.service import create_app


class WarmOnStart:
    """A pass-through root middleware of the API server: its start-up (or first request) starts the
    search service's background warm-up, once."""

    def __init__(self, app: Any, service: Any) -> None:
        self.app, self.service, self.started = app, service, False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self.started and scope["type"] in ("lifespan", "http"):
            self.started = True
            self.service.warm_in_background()  # starts a thread and returns: no request waits for it
        await self.app(scope, receive, send)


search_app = create_app()


class RagpipePlugin(AirflowPlugin):
    name = "ragpipe"
    fastapi_apps = [{"app": search_app, "url_prefix": URL_PREFIX, "name": "ragpipe search"}]
    fastapi_root_middlewares = [{"middleware": WarmOnStart, "kwargs": {"service": search_app.state.service},
                                 "name": "ragpipe search warm-up"}]
    external_views = [{"name": "Search", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "ragpipe-search",
                       "category": "browse"}]
