-- luacheck: read globals optional_env
-- A config for `rotor rotate --config rotor.conf.lua --only-due` (cron, a systemd timer, a
-- Kubernetes CronJob). Checked as a whole before anything runs; every key: doc/CONFIG.md.
-- Credentials come from the environment; a variable read here that is unset stops the run
-- (optional_env(NAME) reads one that may be unset). Relative paths are this file's directory's.
return {
  store = "./secrets",                       -- beside this file, whatever the working directory
  due = { max_age_days = 60 },               -- every slot: rotate at 60 days (or 14 days before expiry)
  slots = {
    {
      slot = "genesys/reporting",
      provider = { kind = "genesys", options = {
        region = optional_env("GENESYS_REGION"),        -- production: e.g. "mypurecloud.ie"
        base_url = optional_env("GENESYS_BASE_URL"),    -- the simulator: its URLs and CA instead
        token_url = optional_env("GENESYS_TOKEN_URL"),
        cainfo = optional_env("ROTOR_CAINFO"),
        client_id = os.getenv("GENESYS_ADMIN_ID"),
        client_secret = os.getenv("GENESYS_ADMIN_SECRET"),
      } },
      target = { client_id = os.getenv("GENESYS_CLIENT_ID") },
      -- a second client; the old one is disabled only after the new one is deployed
      strategy = "new_client",
      deploy = { kind = "dotenv", path = "reporting.env" },   -- the app reads CLIENT_ID/CLIENT_SECRET here
    },
  },
}
