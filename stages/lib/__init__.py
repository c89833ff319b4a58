"""Helpers shared by stages (caption formats, word and clip rules, ffmpeg, yt-dlp); not stages."""
