"""``rankstream notify``: alerts from ``<prefix>.alerts`` to AlertManager and chat (Slack, DingTalk, Feishu, JSON).

Pure parts: :mod:`.alerts` (the record), :mod:`.config` (YAML routes and
receivers), :mod:`.payloads` (what each receiver is sent), :mod:`.signing`
(robot signatures), :mod:`.outbox` (grouping, dedup, retries, offsets). Edges:
:mod:`.sender` (HTTP), :mod:`.worker` and :mod:`.consumer` (Kafka). See docs/notify.md.
"""
