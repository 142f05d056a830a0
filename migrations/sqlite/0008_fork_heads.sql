-- The fork a pull request's head commit is fetched from, when the provider
-- keeps no ref for it in the base repository (Bitbucket Cloud).
ALTER TABLE runs ADD COLUMN head_repo TEXT;
