"""Every write goes through a service here (HackSoft style: `<entity>_<action>`, keyword-only).

Services are sync and transactional; async callers use `database_sync_to_async`. Services that
append durable events return them, and the caller publishes them *after* the transaction commits
(`chat.infra.bus.publish_events`): the channel layer only ever rings a doorbell for rows that exist.
"""
