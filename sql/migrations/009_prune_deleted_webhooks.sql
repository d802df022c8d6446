-- Deleted webhooks are pruned once past retention (maintenance, prune_deleted_webhooks): the events targeted at
-- one (its tests, a producer's events addressed to it) are found through this index, for the prune itself and
-- for the foreign key check of the webhook's DELETE, which would otherwise read the whole events table.

CREATE INDEX events_webhook ON events (webhook_id) WHERE webhook_id IS NOT NULL;
