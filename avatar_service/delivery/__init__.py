"""Outbound deliveries: one durable outbox for webhooks and avatar forwarding."""
