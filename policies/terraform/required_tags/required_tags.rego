# Rego 1.0 syntax.
package terraform

required_tag_keys := {"owner", "team"}

tags_of(after) := tags if {
	tags := after.tags
	is_object(tags)
} else := {}

deny contains msg if {
	some r in input.tfplan.resource_changes
	r.mode == "managed"
	startswith(r.type, "aws_")
	some action in r.change.actions
	action in {"create", "update"}
	present := {k | some k, _ in tags_of(r.change.after)}
	missing := required_tag_keys - present
	count(missing) > 0
	msg := sprintf("%s: missing required tags %v", [r.address, sort(missing)])
}
