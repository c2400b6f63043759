"""The search service inside Airflow: mounted on the API server at /ragpipe, and a "Search" entry
in the UI's navigation. Registered through the `airflow.plugins` entry point, so installing the
package is enough. Creating the app is cheap: nothing connects or loads a model before the first
request."""

from airflow.plugins_manager import AirflowPlugin

from pipelines.airflow import SEARCH_URL_PREFIX as URL_PREFIX
from pipelines.service import create_app


class RagpipePlugin(AirflowPlugin):
    name = "ragpipe"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "ragpipe search"}]
    external_views = [{"name": "Search", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "ragpipe-search",
                       "category": "browse"}]
