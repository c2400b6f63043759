-- take_rate: may a request of `tokens` tokens go to `bucket` now, under `requests_per_minute` and
-- `tokens_per_minute` (either NULL: no limit of that kind)? GCRA without burst: a request conforms once
-- the bucket's theoretical arrival times (of the next request, of the next token) have passed; sending
-- moves them on by its share of the minute (a request of many tokens moves the token one further).
-- Returns the seconds to wait:
-- - a query (`query`: a search's embedding, a rerank, a chat answer) always reserves its slot, the
--   first one free after those reserved, and sends after the returned wait;
-- - bulk work (a run's embedding) reserves only when it may send now (0 returned); otherwise it
--   reserves nothing and asks again after the returned wait, so queries go before it.
CREATE OR REPLACE FUNCTION ragpipe.take_rate(bucket text, requests_per_minute double precision,
                                             tokens_per_minute double precision, tokens int, query boolean)
RETURNS double precision LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    b ragpipe.rate_limits;
    now_s double precision := extract(epoch FROM clock_timestamp());
    req_step double precision := CASE WHEN requests_per_minute > 0 THEN 60 / requests_per_minute ELSE 0 END;
    tok_step double precision := CASE WHEN tokens_per_minute > 0 THEN 60 * greatest(tokens, 1) / tokens_per_minute
                                      ELSE 0 END;
    send_at double precision;
BEGIN
    INSERT INTO ragpipe.rate_limits AS r (bucket) VALUES (take_rate.bucket) ON CONFLICT DO NOTHING;
    SELECT * INTO b FROM ragpipe.rate_limits r WHERE r.bucket = take_rate.bucket FOR UPDATE;
    send_at := greatest(now_s, b.request_tat, b.token_tat);
    IF send_at > now_s AND NOT query THEN
        RETURN send_at - now_s;  -- bulk: nothing reserved, ask again then
    END IF;
    UPDATE ragpipe.rate_limits r
    SET request_tat = greatest(b.request_tat, send_at) + req_step,
        token_tat = greatest(b.token_tat, send_at) + tok_step
    WHERE r.bucket = take_rate.bucket;
    RETURN send_at - now_s;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.take_rate(text, double precision, double precision, int, boolean) FROM PUBLIC;
