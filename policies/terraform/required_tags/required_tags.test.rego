package terraform

test_tagged_resources_pass if {
	count(deny) == 0 with input as data.terraform.required_tags.mock.tagged
}

test_untagged_resources_are_denied if {
	deny["aws_instance.web: missing required tags [\"owner\", \"team\"]"] with input as data.terraform.required_tags.mock.untagged
}

test_each_missing_tag_is_named if {
	deny["aws_instance.web: missing required tags [\"team\"]"] with input as data.terraform.required_tags.mock.half_tagged
}
