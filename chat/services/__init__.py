"""Every write goes through a service here (HackSoft style: `<entity>_<action>`, keyword-only).

Services are sync and transactional; async callers use `chat.publishing.run_service`. A service
schedules what its change must make happen elsewhere (events to publish, sockets to close, runners
to wake) with `chat.publishing.after_commit`: the channel layer only ever rings a doorbell for rows
that exist, and no caller publishes anything itself.
"""
