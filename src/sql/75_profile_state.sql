-- What people said about themselves: traits and consent.  Both are kept per
-- identifier (the source of truth, which merges, splits, rebuilds and forget
-- never have to rewrite) and derived into the profile's record
-- (cdp.profile_records.traits, trait_times, consent) for reading.

-- What a person can consent to.  Segment consent categories and RudderStack
-- consent ids map to purposes by lower-cased name.
CREATE TABLE cdp.purposes (
    name            text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    default_granted bool NOT NULL,
    defined_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE cdp.purposes IS
    'purposes a person can consent to, and whether one who never decided counts as granted';
INSERT INTO cdp.purposes (name, default_granted) VALUES
    ('analytics', true), ('personalization', false), ('marketing', false), ('advertising', false);

-- Per identifier, for each trait key the latest value its messages set and
-- that value's event time (ISO 8601 text, compared as timestamptz).
CREATE TABLE cdp.identifier_traits (
    identifier  cdp.identifier PRIMARY KEY,
    traits      jsonb NOT NULL,
    trait_times jsonb NOT NULL
);

-- Every consent decision ever recorded (the history), and per identifier and
-- purpose the latest by decision time.
CREATE TABLE cdp.consent_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    identifier  cdp.identifier NOT NULL,
    purpose     text NOT NULL,
    granted     bool NOT NULL,
    at          timestamptz NOT NULL,    -- the decision's time: the event's, or set_consent's at
    message_id  text,                    -- the message that carried it; NULL from set_consent
    source      text NOT NULL,           -- the message's source, or 'api' for set_consent
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_log_identifier_idx ON cdp.consent_log (identifier);

CREATE TABLE cdp.identifier_consent (
    identifier  cdp.identifier NOT NULL,
    purpose     text NOT NULL,
    granted     bool NOT NULL,
    at          timestamptz NOT NULL,
    message_id  text,
    source      text NOT NULL,
    PRIMARY KEY (identifier, purpose)
);
