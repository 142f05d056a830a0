version = "v1"

# Only approved EC2 instance types.
policy "instance_types" {
  enabled           = true
  enforcement_level = "hard-mandatory"
}

# Every AWS resource carries owner and team tags.
policy "required_tags" {
  enabled           = true
  enforcement_level = "soft-mandatory"
}

# Warn when a change raises the monthly cost by more than $100.
policy "cost_limit" {
  enabled           = true
  enforcement_level = "advisory"
}
