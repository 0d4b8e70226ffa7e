"""mm_platform: many models at scale."""
