"""A Telegram account through Telethon, shared by everything that talks to Telegram: the
downloader's Telethon adapter, `tgdl login` and `tgdl sync`.

- `errors`: what can go wrong, in the downloader port's words (no Telethon in it);
- `client`: settings, sessions and clients built so that every error reaches us;
- `peers`, `media`: chats and downloadable files as Telegram describes them;
- `rpc`: Telethon's exceptions turned into `errors`.
"""
