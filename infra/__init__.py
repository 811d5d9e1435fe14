"""The platform stack: VPC, EKS, Karpenter pools for Trainium/Inferentia, FSx, operators."""
