package terraform

test_allowed_type_passes {
	count(deny) == 0 with input as data.terraform.instance_types.mock.small
}

test_large_type_is_denied {
	deny["aws_instance.web: instance type \"m5.4xlarge\" is not allowed (use one of [\"t3.medium\", \"t3.micro\", \"t3.nano\", \"t3.small\"])"] with input as data.terraform.instance_types.mock.large
}

test_deleting_a_large_instance_is_fine {
	count(deny) == 0 with input as data.terraform.instance_types.mock.delete_large
}
