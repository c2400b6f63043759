"""`ragpipe watch NAME --setup`: what makes a source send change events, installed for the user.

- sql: a statement-level trigger on `watch.table` that NOTIFYs the collection's channel (one
  notification per statement, however many rows it changed). Needs ownership of the table (or
  the TRIGGER privilege on it) and CREATE on its schema, for the function
  `<schema>.ragpipe_notify_change()`.
- s3: an SQS queue (`watch.queue_url`, else one named ragpipe-<collection> is created) that the
  bucket may send to, and the bucket's notification of created and removed objects under the
  source's prefix. Needs s3:PutBucketNotification and sqs:CreateQueue/SetQueueAttributes.
- folder and tabular need nothing (the file system's events); web has no events (it is polled)."""

import json
from typing import Any

import psycopg
from psycopg import sql

from pipelines.config import CollectionSpec, ConfigError
from pipelines.sources import SourceError, make_source
from pipelines.store.database import mask_url
from pipelines.watch.changes import channel, identifier, queue_name, sqs_client

TABLE_NAME = ("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.oid = to_regclass(%s)")
TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION {schema}.ragpipe_notify_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], lower(TG_OP));
    RETURN NULL;
END
$fn$"""


def set_up(spec: CollectionSpec, remove: bool = False) -> str:
    """Install (or remove) what sends the collection's change events; returns what was done."""
    if not spec.watch:
        raise ConfigError(f"collection {spec.name!r} has no `watch:` in collections.yml (e.g. `watch: true`)")
    kind = spec.source["kind"]
    if kind == "sql":
        return sql_trigger(spec, remove)
    if kind == "s3":
        return s3_notification(spec, remove)
    if kind in ("web", "gcs", "azure"):
        what = "the sitemap" if kind == "web" else "the bucket" if kind == "gcs" else "the container"
        return f"{spec.name}: {kind} sources have no change events here; `ragpipe watch` lists {what} every " \
               f"{spec.watch['interval_s']:.0f} s (watch.interval_s)"
    return f"{spec.name}: nothing to set up; `ragpipe watch` follows the file system's own events"


def trigger_name(spec: CollectionSpec) -> str:
    return identifier("ragpipe_watch_", spec.name)


def sql_trigger(spec: CollectionSpec, remove: bool) -> str:
    url = make_source(spec.source).conninfo()
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise SourceError(f"cannot connect to {mask_url(url)}: {mask_url(str(exc).strip())}") from None
    with conn:
        found = conn.execute(TABLE_NAME, (spec.watch["table"],)).fetchone()
        if found is None:
            raise SourceError(f"{spec.name}: watch.table {spec.watch['table']!r} is not a table of the source database")
        schema, table = sql.Identifier(found[0]), sql.Identifier(*found)
        trigger = sql.Identifier(trigger_name(spec))
        with conn.transaction():
            if remove:
                conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger, table))
                return f"{spec.name}: removed trigger {trigger_name(spec)} from {found[0]}.{found[1]}"
            conn.execute(sql.SQL(TRIGGER_FUNCTION).format(schema=schema))
            conn.execute(sql.SQL("CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
                                 "FOR EACH STATEMENT EXECUTE FUNCTION {}.ragpipe_notify_change({})").format(
                trigger, table, schema, sql.Literal(channel(spec.name))))
    return (f"{spec.name}: trigger {trigger_name(spec)} on {found[0]}.{found[1]} notifies channel "
            f"{channel(spec.name)} after each insert, update, delete or truncate")


def s3_notification(spec: CollectionSpec, remove: bool) -> str:
    import boto3

    source = make_source(spec.source)
    bucket, _, prefix = source.prefix.partition("/")
    s3 = boto3.client("s3", **{k: v for k, v in {"endpoint_url": spec.source.get("endpoint_url"),
                                                   "region_name": spec.source.get("region")}.items() if v})
    sqs = sqs_client(spec)
    config_id = f"ragpipe-{spec.name}"
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    queues = [q for q in current.get("QueueConfigurations", []) if q.get("Id") != config_id]
    if remove:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
            **current, "QueueConfigurations": queues})
        return f"{spec.name}: removed notification {config_id} from bucket {bucket}"
    url = spec.watch.get("queue_url") or sqs.create_queue(QueueName=queue_name(spec.name))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(queue_policy(arn, bucket))})
    rule: dict[str, Any] = {"Id": config_id, "QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}
    if prefix:
        rule["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix + "/"}]}}
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        **current, "QueueConfigurations": [*queues, rule]})
    return f"{spec.name}: bucket {bucket} notifies {url} of objects created and removed under {prefix or '/'}"


def queue_policy(queue_arn: str, bucket: str) -> dict[str, Any]:
    """The queue may receive messages from this bucket's notifications only."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"}, "Action": "sqs:SendMessage",
        "Resource": queue_arn, "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}}}]}
