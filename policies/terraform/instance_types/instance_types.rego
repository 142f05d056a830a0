# Pre-1.0 rego syntax, as most existing Scalr policy repositories use.
package terraform

allowed_instance_types = {"t3.nano", "t3.micro", "t3.small", "t3.medium"}

deny[reason] {
	r := input.tfplan.resource_changes[_]
	r.mode == "managed"
	r.type == "aws_instance"
	action := r.change.actions[_]
	action != "delete"
	t := r.change.after.instance_type
	not allowed_instance_types[t]
	reason := sprintf("%s: instance type %q is not allowed (use one of %v)", [r.address, t, sort(allowed_instance_types)])
}
